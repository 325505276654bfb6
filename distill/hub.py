"""Asking the Hugging Face hub about a name once, quickly: the look-up the model and dataset loaders share.

transformers and datasets retry an unreachable hub for about half a minute before they fail; one request with a short
timeout tells the same in seconds, and `HF_HUB_OFFLINE=1` makes none at all.
"""

from __future__ import annotations

from typing import Literal

# a hub that answers does so well within this; transformers' own retries take about half a minute to give up
HUB_TIMEOUT = 5.0

HubStatus = Literal["found", "missing", "invalid", "offline", "unreachable"]


def hub_status(repo_id: str, repo_type: Literal["model", "dataset"] = "model") -> HubStatus:
    """How the Hugging Face hub answers for `repo_id`, asked once without retries (`HUB_TIMEOUT` seconds).

    "found"; "missing" (no such repository, or a private one without a token); "invalid" (not a repository id);
    "offline" (HF_HUB_OFFLINE is set: nothing is asked); "unreachable" (no answer, or the hub failed to answer).
    """
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError, RepositoryNotFoundError

    if constants.HF_HUB_OFFLINE:
        return "offline"
    try:
        HfApi().repo_info(repo_id, repo_type=repo_type, timeout=HUB_TIMEOUT)
    except HFValidationError:
        return "invalid"
    except RepositoryNotFoundError:
        return "missing"
    except HfHubHTTPError as err:  # the hub answered: with an error of its own (5xx, 429) it did not serve the id
        status = err.response.status_code if err.response is not None else 500
        return "unreachable" if status >= 500 or status == 429 else "found"
    except Exception:  # noqa: BLE001 - any failure to get an answer (DNS, refused, timeout, TLS) is "unreachable"
        return "unreachable"
    return "found"


def hub_endpoint() -> str:
    """The hub address a look-up goes to (`HF_ENDPOINT`, huggingface.co by default), for messages."""
    from huggingface_hub import constants

    return constants.ENDPOINT
