"""Hugging Face interop: the key map to transformers' ``Sam3Model`` (``keymap``), its config built from
our size spec (``config``), transformers-format checkpoints read as base weights (``checkpoint``), the
``transformers`` and ``transformers-peft`` exports (``transformers_model``, ``transformers_peft``),
model cards (``model_card``) and uploads (``hub``).

transformers is an optional extra (``pip install -e ".[hf]"``): only the modules that build a
``Sam3Config`` import it, lazily; reading transformers-format weights needs only safetensors.
"""
