"""Test scenes for the smoke test, and what the served model must answer, as JSON on stdout.

    docker compose exec -T api python - COUNT MODEL < docker/smoke_scenes.py > scenes.json

Runs inside the built image, so the scenes come from the very `model.scenes` the model was trained on
and the host needs neither Pillow nor torch. For each held-out scene (never seen in training): the PNG
(base64), the true caption, a question and its true answer, and what `MODEL` itself answers when called
directly, without HTTP, batching or image decoding in between: the service must answer exactly that.
"""

import base64
import io
import json
import random
import sys

from model import load_model
from model.scenes import HELD_OUT_SEED_START, ask_any, make_scene, render

count, model_name = int(sys.argv[1]), sys.argv[2]
model = load_model(model_name, device="cpu")

scenes = []
for seed in range(HELD_OUT_SEED_START + 1, HELD_OUT_SEED_START + 1 + count):
    scene = make_scene(seed)
    question = ask_any(scene, random.Random(seed))
    image = render(scene)
    png = io.BytesIO()
    image.save(png, format="PNG")  # lossless: the service decodes exactly these pixels
    scenes.append(
        {
            "seed": seed,
            "png_base64": base64.b64encode(png.getvalue()).decode(),
            "caption": scene.caption,
            "question": question.text,
            "answer": question.answer,
            "model_caption": model.caption([image])[0],
            "model_answer": model.answer([image], [question.text])[0],
            "model_image_embedding": model.embed_image([image])[0].tolist(),
        }
    )
captions = [scene["caption"] for scene in scenes]
text_embeddings = model.embed_text(captions).tolist()
json.dump({"scenes": scenes, "caption_embeddings": text_embeddings}, sys.stdout)
