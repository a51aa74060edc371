"""mevqa: micro-expression visual question answering with LoRA-tuned vision-language models."""

__version__ = "0.1.0"
