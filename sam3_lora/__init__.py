"""LoRA fine-tuning for Meta's SAM3, composed with Hydra."""

import warnings

__version__ = "0.1.0"

# Import-time noise from sam3 0.1.4 on machines without CUDA: it decorates functions
# with CUDA autocast and uses torch.jit.script; neither matters for image training.
warnings.filterwarnings("ignore", message="CUDA is not available or torch_xla is imported")
warnings.filterwarnings("ignore", message=r"`torch.jit.script` is deprecated")
