import json, sys
import numpy as np, onnxruntime as ort
from PIL import Image, ImageOps

def prepare(path, r):  # one photo as NanoNet preprocesses it for an input whose recipe is r
    with Image.open(path) as image:
        image.draft("RGB", (r["draft_side"], r["draft_side"]))  # JPEG: decoded at reduced scale
        image = ImageOps.exif_transpose(image).convert("RGBA")
    flat = Image.new("RGB", image.size, (255, 255, 255))
    flat.paste(image, mask=image)  # transparency on white
    if (shrink := r["max_side"] / max(flat.size)) < 1:
        size = [max(1, round(side * shrink)) for side in flat.size]
        flat = flat.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    side = min(flat.size) * r["crop_pct"]  # the centre square, resized in one step
    left, top = (flat.width - side) / 2, (flat.height - side) / 2
    crop = flat.resize((r["size"], r["size"]), Image.Resampling[r["resample"].upper()],
                       box=(left, top, left + side, top + side))
    pixels = (np.asarray(crop, np.float32) / 255 - np.float32(r["mean"])) / np.float32(r["std"])
    return pixels.transpose(2, 0, 1)  # HWC -> CHW

session = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
meta = session.get_modelmeta().custom_metadata_map
labels, recipes = json.loads(meta["labels"]), json.loads(meta["preprocessing"])
photos = sys.argv[2:]
feeds = {name: np.stack([prepare(photo, r) for photo in photos]) for name, r in recipes.items()}
probabilities = session.run(None, feeds)[0]  # a row per photo, a column per label
for photo, row in zip(photos, probabilities):
    print(photo, labels[row.argmax()], round(float(row.max()), 4))
