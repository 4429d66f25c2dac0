"""`python main.py fit|test|generate|bench|bench-heads|bench-plot ...` — the same as the `tjdnet` command."""

from tjdnet.cli import main

if __name__ == "__main__":
    main()
