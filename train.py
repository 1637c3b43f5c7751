"""Fine-tune explained classifiers and pretrain attributors: ``python train.py fit --config configs/....yaml``."""

from amlx.cli import main

if __name__ == "__main__":
    main()
