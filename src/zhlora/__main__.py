"""`python -m zhlora ...` (used by torchrun: `torchrun --nproc_per_node 2 -m zhlora train ...`)."""
from zhlora.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
