"""Downstream HER2 classifier (the paper's Table 2): does generated IHC carry the score?

Protocol (docs/method.md, "Downstream"): a ResNet50 is trained on the generated
IHC tiles of a method to the four membrane staining intensity classes
(0, 1+, 2+, 3+) and tested on real IHC tiles of an external set; accuracy and
macro F1 are reported. The same code trains on real IHC or on H&E for the
paper's reference rows.

The network is torchvision's ResNet50 with a new 4-way final layer. ImageNet
initialisation (the paper's choice) comes from torchvision's file
``resnet50-0676ba61.pth`` (IMAGENET1K_V1) or ``resnet50-11ad3fa6.pth``
(IMAGENET1K_V2), given explicitly or found in the weight folders
(``tdkstain.weights.files.search_folders``, the torch hub cache among them); nothing is
downloaded. Without it the network starts from random weights and the model
card says its scores are not comparable with the paper's.

Training recipe (ours; the paper gives none): tiles resized to ``size``
(224) px, ImageNet mean/std normalisation, random flips and 90-degree
rotations (staining has no orientation), AdamW, cross-entropy, constant
learning rate (1e-4 from ImageNet weights, 1e-3 from scratch), the last epoch
kept (no validation split: the test set is external by design).
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from tdkstain.plumbing.atomic import atomic_path, write_text_atomic
from tdkstain.plumbing.devices import resolve_device
from tdkstain.plumbing.errors import TdkstainError
from tdkstain.plumbing.limits import check_number
from tdkstain.evaluation.pairing import HER2_LABELS, label_for, list_images, read_labels_csv
from tdkstain.data.images import read_rgb
from tdkstain.weights.files import search_folders

CLASSES: tuple[str, ...] = HER2_LABELS  # "0", "1+", "2+", "3+": class index = position
# torchvision's ImageNet normalisation (the statistics its weights were trained with).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# torchvision's published ImageNet weight files (name includes the sha256 prefix torchvision checks).
IMAGENET_FILES: dict[str, tuple[str, ...]] = {
    "resnet50": ("resnet50-0676ba61.pth", "resnet50-11ad3fa6.pth"),
    "resnet18": ("resnet18-f37072fd.pth",),
}
ARCHS = ("resnet50", "resnet18", "tiny")
MODEL_FILE = "model.safetensors"
CARD_FILE = "model.json"
# Bounds of the settings (checked before any tile is read): tiles are kept in memory at SIZE x SIZE px.
MAX_SIZE = 2048
MAX_BATCH = 4096
MAX_EPOCHS = 100_000


# --------------------------------------------------------------------------- networks


def create_model(arch: str = "resnet50", num_classes: int = len(CLASSES)) -> nn.Module:
    """A torchvision ResNet with a ``num_classes``-way head, random weights.

    ``arch``: ``resnet50`` (the paper), ``resnet18``, or ``tiny`` (torchvision
    ResNet with one BasicBlock per stage: for tests and CPU demos only).
    """
    from torchvision.models import resnet18, resnet50
    from torchvision.models.resnet import BasicBlock, ResNet

    if arch == "resnet50":
        return resnet50(weights=None, num_classes=num_classes)
    if arch == "resnet18":
        return resnet18(weights=None, num_classes=num_classes)
    if arch == "tiny":
        return ResNet(BasicBlock, [1, 1, 1, 1], num_classes=num_classes)
    raise TdkstainError(f"classifier architecture {arch!r} is unknown: use one of {', '.join(ARCHS)}")


def find_imagenet_weights(arch: str, explicit: str | os.PathLike | None = None) -> Path | None:
    """The ImageNet weight file of ``arch``: ``explicit`` (must exist), else the first found in the weight folders, else None.

    The weight folders are those every pretrained file is looked for in
    (:func:`tdkstain.weights.files.search_folders`: ``$TDKSTAIN_WEIGHTS``,
    ``~/.cache/tdkstain/weights``, the torch hub cache), in that order.
    """
    if explicit is not None:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise TdkstainError(
                f"--imagenet-weights {path}: no such file; download torchvision's {IMAGENET_FILES.get(arch, ('?',))[0]} "
                "on a connected machine (torchvision.models.ResNet50_Weights.IMAGENET1K_V1) and copy it here"
            )
        return path
    for folder in search_folders():
        for name in IMAGENET_FILES.get(arch, ()):
            if (folder / name).is_file():
                return folder / name
    return None


def load_imagenet(model: nn.Module, path: Path) -> None:
    """Copy ImageNet weights into ``model``, all but the final ``fc`` layer (its class count differs)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a corrupt or foreign file raises many exception types
        raise TdkstainError(f"{path}: not a torchvision weight file ({err})") from None
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatches raise even when not strict
        raise TdkstainError(
            f"{path}: does not fit this network ({str(err).splitlines()[1].strip()} ...); "
            "give the ImageNet weights of the same architecture"
        ) from None
    if unexpected or set(missing) - {"fc.weight", "fc.bias"}:
        raise TdkstainError(
            f"{path}: does not fit this network (missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}); "
            "give the ImageNet weights of the same architecture"
        )


# --------------------------------------------------------------------------- data


def labelled_images(images_dir: str | os.PathLike, labels_csv: str | os.PathLike | None) -> list[tuple[Path, str]]:
    """``(path, label)`` of every image of ``images_dir`` (labels from the CSV, else BCI-style names).

    Raises TdkstainError naming the unlabelled files when some have no label.
    """
    files = list_images(images_dir, "classifier images")
    labels = read_labels_csv(labels_csv) if labels_csv is not None else None
    out, missing = [], []
    for stem, path in files.items():
        label = label_for(stem, labels)
        (out.append((path, label)) if label is not None else missing.append(path.name))
    if missing:
        where = f"in {labels_csv}" if labels_csv is not None else "in their names (BCI style: NAME_2+.png)"
        raise TdkstainError(
            f"{len(missing)} image(s) of {images_dir} have no HER2 label {where}, e.g. {', '.join(missing[:3])}; "
            "label them or remove them"
        )
    return out


def _resize(image: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    if image.shape[0] == size and image.shape[1] == size:
        return image if image.flags.writeable else image.copy()  # torch.from_numpy warns on read-only arrays
    return np.array(Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR))  # writable copy


class TileSet(torch.utils.data.Dataset):
    """Labelled tiles resized once to ``size`` px and kept as uint8 (600 tiles at 224 px: 90 MB).

    Items: ``((3, size, size) float32 ImageNet-normalised, class index)``.
    ``augment``: random flips and 90-degree rotations.
    """

    def __init__(self, items: Sequence[tuple[Path, str]], size: int, augment: bool = False, progress: bool = False):
        from tqdm import tqdm

        self.paths = [p for p, _ in items]
        self.targets = [CLASSES.index(label) for _, label in items]
        self.images = [
            _resize(read_rgb(p), size)
            for p in tqdm(self.paths, desc="reading", unit="tile", disable=not progress, file=sys.stderr)
        ]
        self.augment = augment
        self.mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        x = torch.from_numpy(self.images[index]).permute(2, 0, 1).float() / 255.0
        if self.augment:
            if torch.rand(()) < 0.5:
                x = x.flip(2)
            x = torch.rot90(x, int(torch.randint(0, 4, ())), dims=(1, 2))
        return (x - self.mean) / self.std, self.targets[index]


# --------------------------------------------------------------------------- scores


def classification_scores(truth: Sequence[int], predicted: Sequence[int], classes: Sequence[str] = CLASSES) -> dict:
    """Accuracy, macro F1, per-class precision/recall/F1 and the confusion matrix.

    ``confusion[i][j]`` counts tiles of true class ``i`` predicted as ``j``.
    Macro F1 averages the per-class F1 over the classes present in the truth
    or the predictions (scikit-learn's ``f1_score(average="macro")``); a class
    with no true and no predicted tile has no F1 and is left out; a precision
    or recall of 0/0 counts as 0.
    """
    truth = np.asarray(truth, np.int64)
    predicted = np.asarray(predicted, np.int64)
    if truth.shape != predicted.shape or truth.size == 0:
        raise TdkstainError("classification_scores: truth and predictions must be non-empty and of equal length")
    k = len(classes)
    confusion = np.zeros((k, k), np.int64)
    np.add.at(confusion, (truth, predicted), 1)
    per_class = {}
    f1s = []
    for i, name in enumerate(classes):
        tp = int(confusion[i, i])
        fp = int(confusion[:, i].sum()) - tp
        fn = int(confusion[i, :].sum()) - tp
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        present = bool(confusion[i, :].sum() or confusion[:, i].sum())
        per_class[name] = {"precision": precision, "recall": recall, "f1": f1, "support": int(confusion[i, :].sum())}
        if present:
            f1s.append(f1)
    return {
        "tiles": int(truth.size),
        "accuracy": float((truth == predicted).mean()),
        "macro_f1": float(np.mean(f1s)),
        "per_class": per_class,
        "classes": list(classes),
        "confusion_matrix": confusion.tolist(),
        "confusion_matrix_axes": "rows: true class, columns: predicted class",
    }


# --------------------------------------------------------------------------- training and evaluation


@dataclass
class TrainSettings:
    """Every setting of ``train_classifier``; the only copy of each default."""

    arch: str = "resnet50"
    size: int = 224  # px, torchvision's ImageNet input size
    epochs: int = 20
    batch: int = 16
    lr: float | None = None  # None: 1e-4 from ImageNet weights, 1e-3 from scratch
    weight_decay: float = 1e-4
    imagenet_weights: str | None = None
    pretrained: bool = True  # look for ImageNet weights (explicit file or the weight folders)
    device: str = "auto"
    seed: int = 0
    progress: bool = True


def train_classifier(
    images_dir: str | os.PathLike,
    labels_csv: str | os.PathLike | None,
    out_dir: str | os.PathLike,
    settings: TrainSettings | None = None,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Train the HER2 classifier on labelled tiles; write ``model.safetensors``, ``model.json``, ``training_log.csv``.

    Returns the model card (``model.json``'s content).
    """
    settings = settings or TrainSettings()
    log = log or (lambda message: print(message, file=sys.stderr))
    check_settings(settings)
    items = labelled_images(images_dir, labels_csv)
    if len(items) < 2:
        raise TdkstainError(f"{images_dir}: {len(items)} labelled tile(s); training the classifier needs at least 2 "
                            "(its batch norm layers need 2 tiles per batch)")
    counts = {c: sum(label == c for _, label in items) for c in CLASSES}
    torch.manual_seed(settings.seed)
    device = resolve_device(settings.device)
    model = create_model(settings.arch)
    initialisation = _initialise(model, settings)
    lr = settings.lr if settings.lr is not None else (1e-4 if initialisation.weights is not None else 1e-3)
    log(f"classify train: {len(items)} tiles ({', '.join(f'{c}: {n}' for c, n in counts.items())}), "
        f"{settings.arch} from {initialisation.description}, {settings.epochs} epochs, lr {lr:g}, device {device}")
    data = TileSet(items, settings.size, augment=True, progress=settings.progress and sys.stderr.isatty())
    generator = torch.Generator().manual_seed(settings.seed)
    loader = torch.utils.data.DataLoader(data, batch_size=settings.batch, shuffle=True, generator=generator,
                                         drop_last=len(data) > settings.batch and len(data) % settings.batch == 1)
    model.to(device).train()
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=settings.weight_decay)
    started = time.perf_counter()
    history = _train_epochs(model, loader, optimiser, device, settings)
    data.augment = False
    recalibrate_batchnorm(model, torch.utils.data.DataLoader(data, batch_sampler=batches_of(len(data), settings.batch)),
                          device)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_weights(out_dir / MODEL_FILE, model, settings.arch)
    card = _model_card(settings, initialisation, lr, images_dir, labels_csv, counts, started, history)
    write_text_atomic(out_dir / CARD_FILE, json.dumps(card, indent=2) + "\n")
    _write_training_log(out_dir / "training_log.csv", history)
    log(f"classify train: final loss {history[-1]['loss']:.4f}, train accuracy {history[-1]['train_accuracy']:.3f}; "
        f"wrote {out_dir / MODEL_FILE}")
    return card


def check_settings(settings: TrainSettings) -> None:
    """Refuse settings out of bounds, naming the command-line option, before any tile is read."""
    check_number("--epochs", settings.epochs, 1, MAX_EPOCHS, integer=True)
    check_number("--batch", settings.batch, 1, MAX_BATCH, integer=True)
    check_number("--size", settings.size, 32, MAX_SIZE, integer=True,
                 hint="tiles are resized to SIZE x SIZE px and kept in memory; ImageNet ResNets take 224")
    check_number("--seed", settings.seed, 0, 2**63 - 1, integer=True)
    if settings.batch == 1 and -(-settings.size // 32) == 1:  # the ResNets downsample by 32 (rounding up)
        raise TdkstainError(
            f"--batch 1 with --size {settings.size}: the ResNet's last feature map is then 1 x 1 px and its batch norm "
            "needs 2 tiles per batch; use --batch 2 or more, or --size 33 or more"
        )
    if settings.lr is not None:
        check_number("--lr", settings.lr, 0, 1, hint="AdamW's learning rate, e.g. 1e-4")
        if settings.lr <= 0:
            raise TdkstainError(f"--lr={settings.lr:g}: the learning rate must be above 0, e.g. 1e-4")


def batches_of(n: int, batch: int) -> list[list[int]]:
    """Indices ``0..n-1`` in order, in batches of ``batch``; a last batch of one tile joins the one before
    (unless ``batch`` is 1: :func:`check_settings` allows that only where one tile is enough).

    Batch norm in training mode needs more than one value per channel: a
    lone last tile whose last features are 1 x 1 px (``--size`` 32) would
    stop the run ("Expected more than 1 value per channel").
    """
    batches = [list(range(start, min(start + batch, n))) for start in range(0, n, batch)]
    if batch > 1 and len(batches) > 1 and len(batches[-1]) == 1:
        last = batches.pop()
        batches[-1] = batches[-1] + last
    return batches


@dataclass(frozen=True)
class _Initialisation:
    """Where the classifier's weights started, as the model card states it."""

    weights: Path | None  # the ImageNet file loaded, None for random weights
    description: str
    canonical: bool  # the paper's setting: ResNet50 from ImageNet weights


def _initialise(model: nn.Module, settings: TrainSettings) -> _Initialisation:
    """Load ImageNet weights into ``model`` when asked and found; warn when asked and not found."""
    weights = find_imagenet_weights(settings.arch, settings.imagenet_weights) if settings.pretrained else None
    if weights is not None:
        load_imagenet(model, weights)
        return _Initialisation(weights, f"ImageNet ({weights.name})", settings.arch == "resnet50")
    if not settings.pretrained:
        return _Initialisation(None, "random (--scratch)", False)
    expected = " or ".join(IMAGENET_FILES.get(settings.arch, ("(none published)",)))
    looked = ", ".join(str(folder) for folder in search_folders())
    warnings.warn(
        f"training the {settings.arch} classifier from scratch: no ImageNet weights ({expected}) were given or found "
        f"in {looked}; scores are not comparable with the paper's Table 2 "
        "(pass --imagenet-weights)",
        stacklevel=3,  # the caller of train_classifier
    )
    return _Initialisation(None, "random (no ImageNet weights)", False)


def _train_epochs(
    model: nn.Module,
    loader: torch.utils.data.DataLoader,
    optimiser: torch.optim.Optimizer,
    device: torch.device,
    settings: TrainSettings,
) -> list[dict]:
    """Train ``settings.epochs`` epochs; return per epoch its mean loss and training accuracy."""
    from tqdm import tqdm

    loss_fn = nn.CrossEntropyLoss()
    history = []
    for epoch in tqdm(range(1, settings.epochs + 1), desc="epochs", disable=not (settings.progress and sys.stderr.isatty()), file=sys.stderr):
        total_loss, correct, seen = 0.0, 0, 0
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            logits = model(x)
            loss = loss_fn(logits, y)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            total_loss += loss.item() * len(y)
            correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
        history.append({"epoch": epoch, "loss": total_loss / seen, "train_accuracy": correct / seen})
    return history


def _write_weights(path: Path, model: nn.Module, arch: str) -> None:
    from safetensors.torch import save as safetensors_bytes

    # Bytes written from Python: safetensors' save_file can lose a failed flush (full disk) silently.
    data = safetensors_bytes({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
                             metadata={"arch": arch, "classes": ",".join(CLASSES)})
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def _model_card(
    settings: TrainSettings,
    initialisation: _Initialisation,
    lr: float,
    images_dir: str | os.PathLike,
    labels_csv: str | os.PathLike | None,
    counts: dict[str, int],
    started: float,
    history: list[dict],
) -> dict:
    """The content of ``model.json``: what was trained, how, on what, and whether it is comparable with the paper."""
    return {
        "task": "HER2 membrane staining intensity, 4 classes",
        "arch": settings.arch,
        "classes": list(CLASSES),
        "size": settings.size,
        "normalisation": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "input": "RGB in [0, 1]"},
        "initialisation": initialisation.description,
        "canonical": initialisation.canonical,
        "canonical_note": "ResNet50 from ImageNet weights, as the paper" if initialisation.canonical else
        "not the paper's setting (architecture or initialisation differ): do not compare with Table 2",
        "epochs": settings.epochs,
        "batch": settings.batch,
        "lr": lr,
        "weight_decay": settings.weight_decay,
        "seed": settings.seed,
        "train_images": str(images_dir),
        "train_labels": str(labels_csv) if labels_csv is not None else "from file names (BCI style)",
        "train_tiles_per_class": counts,
        "seconds": round(time.perf_counter() - started, 1),
        "final_train_loss": history[-1]["loss"],
        "final_train_accuracy": history[-1]["train_accuracy"],
    }


def _write_training_log(path: Path, history: list[dict]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["epoch", "loss", "train_accuracy"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    write_text_atomic(path, buffer.getvalue())


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, loader: torch.utils.data.DataLoader, device: torch.device) -> None:
    """Replace BatchNorm running statistics by their exact average over ``loader`` ("precise BN").

    With few tiles and steps, the exponential running averages lag the
    weights they normalise for and eval-mode predictions collapse onto one
    class; one pass over the training tiles with the final weights fixes it
    (Wu & Johnson 2021, "Rethinking 'Batch' in BatchNorm", PreciseBN).
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches below
    model.train()
    for x, _ in loader:
        model(x.to(device))
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    model.eval()


def load_classifier(model_dir: str | os.PathLike) -> tuple[nn.Module, dict]:
    """The trained network (eval mode, CPU) and its model card from a ``classify train`` folder."""
    from safetensors.torch import load_file

    model_dir = Path(model_dir)
    card_path, weights_path = model_dir / CARD_FILE, model_dir / MODEL_FILE
    if not card_path.is_file() or not weights_path.is_file():
        raise TdkstainError(f"{model_dir}: no {CARD_FILE} and {MODEL_FILE}; point --model at a 'tdkstain classify train' output")
    try:
        card = json.loads(card_path.read_text(encoding="utf-8"))
        arch, classes, size = card["arch"], tuple(card["classes"]), int(card["size"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, OverflowError) as err:
        raise TdkstainError(f"{card_path}: not a tdkstain classifier card ({err})") from None
    if classes != CLASSES or not 32 <= size <= MAX_SIZE:
        raise TdkstainError(f"{card_path}: classes {classes} / size {size} are not those of tdkstain's HER2 classifier")
    model = create_model(arch, len(classes))
    try:
        model.load_state_dict(load_file(str(weights_path)))
    except Exception as err:
        raise TdkstainError(f"{weights_path}: does not hold {arch} weights ({err})") from None
    return model.eval(), card


@torch.no_grad()
def predict(model: nn.Module, data: TileSet, device: torch.device, batch: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Class indices (N,) int64 and softmax probabilities (N, 4) float64 of every tile of ``data``."""
    model.to(device).eval()
    probs = []
    loader = torch.utils.data.DataLoader(data, batch_size=batch, shuffle=False)
    for x, _ in loader:
        probs.append(torch.softmax(model(x.to(device)).float(), dim=1).cpu().double().numpy())
    p = np.concatenate(probs)
    return p.argmax(1), p


def evaluate_classifier(
    model_dir: str | os.PathLike,
    images_dir: str | os.PathLike,
    labels_csv: str | os.PathLike | None,
    out_dir: str | os.PathLike,
    device: str = "auto",
    batch: int = 32,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Test a trained classifier; write ``classification.json``, ``confusion_matrix.png``, ``predictions.csv``."""
    log = log or (lambda message: print(message, file=sys.stderr))
    check_number("--batch", batch, 1, MAX_BATCH, integer=True)
    model, card = load_classifier(model_dir)
    items = labelled_images(images_dir, labels_csv)
    data = TileSet(items, int(card["size"]), augment=False)
    predicted, probabilities = predict(model, data, resolve_device(device), batch)
    scores = classification_scores(data.targets, predicted)
    result = {
        "model": str(model_dir),
        "model_card": card,
        "images": str(images_dir),
        "labels": str(labels_csv) if labels_csv is not None else "from file names (BCI style)",
        **scores,
        "accuracy_definition": "share of tiles whose predicted class equals the label",
        "macro_f1_definition": "mean over classes present in labels or predictions of 2PR/(P+R) (scikit-learn macro F1)",
        "canonical": bool(card.get("canonical", False)),
    }
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out_dir / "classification.json", json.dumps(result, indent=2) + "\n")
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["stem", "label", "predicted", *(f"p_{c}" for c in CLASSES)])
    for path, truth, pred, prob in zip(data.paths, data.targets, predicted, probabilities):
        writer.writerow([path.stem, CLASSES[truth], CLASSES[pred], *(f"{v:.6f}" for v in prob)])
    write_text_atomic(out_dir / "predictions.csv", buffer.getvalue())
    plot_confusion(out_dir / "confusion_matrix.png", np.asarray(scores["confusion_matrix"]), scores)
    log(f"classify eval: {scores['tiles']} tiles, accuracy {scores['accuracy']:.4f}, macro F1 {scores['macro_f1']:.4f}"
        + ("" if result["canonical"] else " (non-canonical model: not comparable with the paper)"))
    return result


def plot_confusion(path: Path, confusion: np.ndarray, scores: dict) -> Path:
    """Confusion matrix as a PNG: counts, rows true, columns predicted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.2, 3.8), dpi=100)
    ax.imshow(confusion, cmap="Blues")
    for (i, j), value in np.ndenumerate(confusion):
        ax.text(j, i, str(value), ha="center", va="center",
                color="white" if value > confusion.max() / 2 else "black")
    ax.set_xticks(range(len(CLASSES)), CLASSES)
    ax.set_yticks(range(len(CLASSES)), CLASSES)
    ax.set_xlabel("predicted HER2 score")
    ax.set_ylabel("true HER2 score")
    ax.set_title(f"accuracy {scores['accuracy']:.3f}, macro F1 {scores['macro_f1']:.3f}", fontsize=10)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight")
    plt.close(fig)
    return path
