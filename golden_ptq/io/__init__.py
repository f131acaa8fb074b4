"""Files in and out: atomic writes, checkpoints (``.ckpt`` / safetensors), GGUF and Hugging Face
configs, tensor-parallel checkpoint layouts. Nothing here builds a network."""
