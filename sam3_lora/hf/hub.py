"""Uploading an export to the Hugging Face Hub (``export push_to_hub=REPO_ID``), with huggingface_hub.

The export is complete on disk before anything is sent; a failed upload (offline, no token, no
rights) says so and how to upload the same files later. This project's tests run offline: they check
what would be sent (repository, files, the card as README.md) through a stand-in for ``HfApi``; the
upload itself is not exercised.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import List, Optional

from sam3_lora.core.errors import UserError

log = logging.getLogger(__name__)


class HubUploadError(UserError, RuntimeError):
    """The upload failed; the export itself is on disk."""


def push_to_hub(repo_id: str, folder: Optional[Path] = None, files: Optional[List[tuple]] = None) -> str:
    """Create ``repo_id`` (a model repository) if needed and upload ``folder``'s files, or ``files``
    (``(local path, path in the repository)`` pairs, for a single-file export and its card)."""
    try:
        from huggingface_hub import HfApi
    except ImportError as e:  # pragma: no cover - huggingface_hub comes with open-clip-torch and transformers
        raise HubUploadError(f'push_to_hub needs huggingface_hub: pip install -e ".[hf]" ({e})') from e
    what = str(folder) if folder is not None else ", ".join(str(local) for local, _ in files or [])
    api = HfApi()
    try:
        api.create_repo(repo_id=repo_id, repo_type="model", exist_ok=True)
        if folder is not None:
            api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message="Upload from sam3_lora.export")
        for local, in_repo in files or []:
            api.upload_file(
                repo_id=repo_id,
                path_or_fileobj=str(local),
                path_in_repo=in_repo,
                commit_message="Upload from sam3_lora.export",
            )
    except Exception as e:  # noqa: BLE001 - network, authentication and permission errors alike
        raise HubUploadError(
            f"upload of {what} to https://huggingface.co/{repo_id} failed ({type(e).__name__}: {e}). The export is "
            f"complete on disk; log in (huggingface-cli login) and upload it with: huggingface-cli upload {repo_id} "
            f"{what if folder is not None else '<file> <path in repo>'}"
        ) from e
    url = f"https://huggingface.co/{repo_id}"
    log.info("uploaded %s to %s", what, url)
    return url
