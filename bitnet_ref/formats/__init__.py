"""Files of other tools, both ways: the Hugging Face BitNet directory and llama.cpp's GGUF.

The Hugging Face format (hf.py) and its reader (hf_read.py), the GGUF writer and reader (gguf_file.py), and the
export command that writes both (export.py). Not a decode loader: decode/loader.py assembles what these read."""
