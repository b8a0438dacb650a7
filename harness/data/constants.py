"""Numbers several modules share, defined once.

* :data:`ARCFACE_TEMPLATE_112`: InsightFace's 5-point landmark template of 112x112 ArcFace
  crops (left eye, right eye, nose tip, left and right mouth corner; x then y), i.e.
  ``arcface_dst`` of insightface's ``face_align.py``: the 96x112 template with x shifted by 8.
* :data:`CLIP_MEAN` / :data:`CLIP_STD`: OpenAI CLIP's normalisation (open_clip's
  ``OPENAI_DATASET_MEAN`` / ``_STD``); :data:`IMAGENET_MEAN` / :data:`IMAGENET_STD`: torchvision's
  ImageNet normalisation.

This module imports nothing but numpy, so any layer (models, data, the demo builder) can use it.
"""

from __future__ import annotations

import numpy as np

ARCFACE_TEMPLATE_112 = np.array(
    [
        [30.2946 + 8.0, 51.6963],
        [65.5318 + 8.0, 51.5014],
        [48.0252 + 8.0, 71.7366],
        [33.5493 + 8.0, 92.3655],
        [62.7299 + 8.0, 92.2041],
    ],
    dtype=np.float64,
)
ARCFACE_TEMPLATE_112.setflags(write=False)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
