"""The image safety check: an image-classification model (SAFETY_MODEL) looks at every image after it is decoded
and before anything is stored or posted, and says whether it is adult content.

The model is a transformers image classifier (e.g. Falconsai/nsfw_image_detection, a ViT with the labels
`normal` and `nsfw`), from a folder or the Hub through the same download path as the main model
(`engine.loader.resolve_model_folder`). An image's score is the probability of its adult labels together
(`FLAGGED_LABELS`); above the threshold (SAFETY_THRESHOLD) it is flagged. It runs on the GPU thread, on the
engine's device; what the Discord side does with a flagged image is the server's /safety mode.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from engine.loader import LoadProgress, resolve_model_folder
from engine.types import EngineUnavailable

log = logging.getLogger(__name__)

# Labels of adult content across the common NSFW classifiers (Falconsai: nsfw; GantMan-style: porn, hentai, sexy).
FLAGGED_LABELS = frozenset({"nsfw", "porn", "hentai", "sexy", "explicit"})


class SafetyChecker:
    """A loaded classifier: `scores` of a batch of PIL images, `flags` against the threshold."""

    def __init__(self, model_id: str, device: torch.device, threshold: float, progress: LoadProgress | None = None):
        from transformers import AutoImageProcessor, AutoModelForImageClassification

        self.model_id = model_id
        self.threshold = threshold
        try:
            folder = resolve_model_folder(model_id, progress)
            self.processor = AutoImageProcessor.from_pretrained(folder, backend="pil")
            dtype = torch.float16 if device.type == "cuda" else torch.float32
            model = AutoModelForImageClassification.from_pretrained(folder, dtype=dtype)
        except Exception as exc:  # offline, not a classifier, a broken folder: the same sentence for the admin
            reason = _reason(exc.__cause__ or exc)
            raise EngineUnavailable(code="engine.safety_load", model=model_id, reason=reason) from exc
        labels = {int(i): str(name).lower() for i, name in model.config.id2label.items()}
        self.flagged_ids = sorted(i for i, name in labels.items() if name in FLAGGED_LABELS)
        if not self.flagged_ids:
            reason = f"its labels ({', '.join(labels.values())}) name no adult content"
            raise EngineUnavailable(code="engine.safety_load", model=model_id, reason=reason)
        self.model = model.to(device).eval()
        self.device = device
        log.info("Safety check: %s on %s, flagged above %.2f", Path(model_id).name or model_id, device, threshold)

    @torch.inference_mode()
    def scores(self, images: Sequence[Any]) -> list[float]:
        """The probability that each image is adult content (its adult labels together)."""
        inputs = self.processor(images=[image.convert("RGB") for image in images], return_tensors="pt")
        pixels = inputs["pixel_values"].to(self.device, self.model.dtype)
        probabilities = self.model(pixel_values=pixels).logits.float().softmax(dim=-1)
        return probabilities[:, self.flagged_ids].sum(dim=-1).tolist()

    def flags(self, images: Sequence[Any]) -> list[bool]:
        return [score > self.threshold for score in self.scores(images)]


def _reason(exc: BaseException) -> str:
    return f"{exc.__class__.__name__}: {str(exc)[:200]}"
