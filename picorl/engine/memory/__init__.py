"""The KV cache's memory: its layout, its budget, and sleep/wake (plain tensors or CUDA virtual memory)."""
