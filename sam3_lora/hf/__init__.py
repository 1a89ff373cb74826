"""Hugging Face interop: transformers' ``Sam3Config`` built from our size spec (``config``), the
``transformers`` and ``transformers-peft`` exports (``transformers_model``, ``transformers_peft``),
model cards (``model_card``) and uploads (``hub``). The key map to transformers' ``Sam3Model`` and
reading transformers-format base weights belong to the models (``sam3_lora/models/transformers_*.py``).

transformers is an optional extra (``pip install -e ".[hf]"``): only the modules that build a
``Sam3Config`` import it, lazily; reading transformers-format weights needs only safetensors.
"""
