"""``tdkstain classify``: the downstream HER2 classifier of the paper's Table 2 (train, eval)."""

from __future__ import annotations

import argparse

HELP = "train / test a ResNet50 HER2 score classifier (0, 1+, 2+, 3+): the paper's downstream protocol"

DESCRIPTION = """\
The paper's downstream test (Table 2): train a ResNet50 to the four HER2
membrane staining classes on the generated IHC of a method, then test it on
real IHC of an external set. Accuracy and macro F1 close to those of the same
classifier trained on real IHC mean the generated stain carries the score.

Labels come from --labels (CSV stem,label with 0, 1+, 2+, 3+) or BCI-style
names (00052_test_3+.png). ImageNet initialisation, as the paper, needs
torchvision's resnet50-0676ba61.pth or resnet50-11ad3fa6.pth (--imagenet-weights,
or the torch hub cache); without it the network is trained from scratch and
its scores are marked non-canonical.

outputs:
  train: OUT/model.safetensors, OUT/model.json (model card), OUT/training_log.csv
  eval:  OUT/classification.json (accuracy, macro F1, per class, confusion matrix),
         OUT/confusion_matrix.png, OUT/predictions.csv

example:
  tdkstain classify train --images runs/tdk/test --labels labels.csv --out clf/tdk \\
      --imagenet-weights ~/weights/resnet50-0676ba61.pth
  tdkstain classify eval --model clf/tdk --images external/IHC --labels external/labels.csv --out clf/tdk/external
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="classify_command", metavar="{train,eval}", required=True)
    train = sub.add_parser("train", help="train the classifier on labelled tiles",
                           description="Train the HER2 classifier on labelled tiles (generated IHC, real IHC or H&E).")
    train.add_argument("--images", required=True, metavar="DIR", help="folder of training tiles")
    train.add_argument("--labels", metavar="CSV", help="CSV stem,label (default: BCI-style labels in the file names)")
    train.add_argument("--out", required=True, metavar="DIR", help="model folder (created)")
    # Defaults below are classify.TrainSettings' (the only copy); tests/test_classify.py checks the text agrees.
    train.add_argument("--arch", choices=("resnet50", "resnet18", "tiny"), default="resnet50",
                       help="torchvision ResNet: resnet50 (the paper), resnet18, or tiny (tests only) (default: resnet50)")
    train.add_argument("--imagenet-weights", metavar="FILE",
                       help="torchvision ImageNet weights of --arch (e.g. resnet50-0676ba61.pth) (default: the torch "
                            "hub cache; none found: from scratch, non-canonical)")
    train.add_argument("--scratch", action="store_true", help="do not look for ImageNet weights; start from random weights")
    train.add_argument("--epochs", type=int, default=20, metavar="N", help="passes over the training tiles (default: 20)")
    train.add_argument("--size", type=int, default=224, metavar="PX", help="tiles are resized to PX x PX (default: 224)")
    train.add_argument("--batch", type=int, default=16, metavar="B", help="tiles per step (default: 16)")
    train.add_argument("--lr", type=float, metavar="LR",
                       help="AdamW learning rate (default: 1e-4 from ImageNet weights, 1e-3 from scratch)")
    train.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    train.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 (default: auto = GPU when present)")

    test = sub.add_parser("eval", help="test a trained classifier: accuracy, macro F1, confusion matrix",
                          description="Test a classifier trained by 'tdkstain classify train' on labelled tiles.")
    test.add_argument("--model", required=True, metavar="DIR", help="output folder of 'tdkstain classify train'")
    test.add_argument("--images", required=True, metavar="DIR", help="folder of test tiles (real IHC of an external set)")
    test.add_argument("--labels", metavar="CSV", help="CSV stem,label (default: BCI-style labels in the file names)")
    test.add_argument("--out", required=True, metavar="DIR", help="results folder (created)")
    test.add_argument("--batch", type=int, default=32, metavar="B", help="tiles per forward pass (default: 32)")
    test.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 (default: auto)")


def run(args: argparse.Namespace) -> int:
    import json

    from tdkstain.evaluation.classifier import TrainSettings, evaluate_classifier, train_classifier

    if args.classify_command == "train":
        settings = TrainSettings(
            arch=args.arch, size=args.size, epochs=args.epochs, batch=args.batch, lr=args.lr,
            imagenet_weights=args.imagenet_weights, pretrained=not args.scratch, device=args.device, seed=args.seed,
        )
        card = train_classifier(args.images, args.labels, args.out, settings)
        print(f"trained {card['arch']} ({card['initialisation']}); model: {args.out}")
        return 0
    result = evaluate_classifier(args.model, args.images, args.labels, args.out, device=args.device, batch=args.batch)
    print(f"accuracy {result['accuracy']:.4f}, macro F1 {result['macro_f1']:.4f} on {result['tiles']} tiles")
    print("confusion matrix (rows true, columns predicted; classes 0, 1+, 2+, 3+):")
    print(json.dumps(result["confusion_matrix"]))
    return 0
