"""Request scheduling: sequences, KV blocks, batches and the step loop that decodes them."""
