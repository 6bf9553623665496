"""`python -m training fit --config configs/train/<name>.yaml [--model.lr ...]`."""

from training.cli import main

if __name__ == "__main__":
    main()
