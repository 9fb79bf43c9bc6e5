
def test_fingerprint_of_a_tensor_larger_than_float32_counts():
    """SmolLM2's embedding has 28,311,552 elements: float32 positions would round past its end."""
    import torch

    from picorl.models.identity import base_model_record

    model = torch.nn.Embedding(28_311_552 // 64, 64)
    record = base_model_record(model, "big")
    assert record["num_parameters"] == 28_311_552
    assert record["fingerprint"][-1] == round(float(model.weight.reshape(-1)[-1]), 6)
