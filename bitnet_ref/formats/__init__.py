"""Files of other tools, both ways: the Hugging Face BitNet directory (hf.py, hf_read.py), llama.cpp's GGUF
(gguf_file.py), and the export command that writes them (export.py)."""
