"""``python -m verifier``: the command line, also what ``accelerate launch -m verifier certify ...`` runs."""

from verifier.cli import main

if __name__ == "__main__":
    main()
