"""Speed levers that leave results as they are: text-encoder cache, frozen weights in bf16, compiled blocks."""
