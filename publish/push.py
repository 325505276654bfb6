"""The upload of a staged folder to the Hugging Face hub, with huggingface_hub's own token lookup."""

from __future__ import annotations

from pathlib import Path

from publish.errors import PublishError
from publish.stage import MANIFEST


def push(folder: Path, repo_id: str, private: bool) -> str:
    """Upload `folder` (but its publish_manifest.json, which is this machine's record of the staged folder) with
    huggingface_hub; the token is huggingface_hub's (HF_TOKEN or the cached login), never printed or written.
    Returns the repository's URL."""
    from huggingface_hub import HfApi, get_token
    from huggingface_hub.errors import HfHubHTTPError

    if not get_token():
        raise PublishError("no Hugging Face token. Set HF_TOKEN or run `hf auth login`, then retry.")
    api = HfApi()
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True)
        api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message="Upload student (python -m publish)",
                          ignore_patterns=[MANIFEST])
    except HfHubHTTPError as error:
        status = getattr(error.response, "status_code", None)
        raise PublishError(f"the hub refused the upload to {repo_id} (HTTP {status}); check that the token may "
                           "write to that namespace.") from None
    # the HTTP client's connection errors (httpx2's derive from neither OSError nor HfHubHTTPError)
    except Exception as error:  # noqa: BLE001
        raise PublishError(f"cannot reach the hub ({type(error).__name__}: {error}); check the network (and "
                           "HF_ENDPOINT) and retry; the staged folder is kept.") from None
    return str(url)
