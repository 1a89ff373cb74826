import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from sam3_lora.models import build_model  # noqa: E402


@pytest.fixture(scope="session")
def tiny_base_state():
    """One tiny SAM3's weights, so every test starts from the same base cheaply."""
    torch.manual_seed(0)
    return build_model("tiny").state_dict()


@pytest.fixture
def tiny_model(tiny_base_state):
    model = build_model("tiny")
    model.load_state_dict(tiny_base_state)
    return model
