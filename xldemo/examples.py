"""Example prompts: passages of the held-out plays, shipped with the package so the app needs no data folder."""

from pathlib import Path

PROMPTS = Path(__file__).resolve().parent / "prompts"
# title -> file in prompts/, each an exact excerpt of the public-domain Project Gutenberg edition that the test
# split holds (tempest_gut.txt, macbeth_gut.txt), several 256-byte segments long and ending on a speaker's name
EXAMPLES = {
    "The Tempest: cast list, then the storm": "tempest_cast.txt",
    "Macbeth: persons represented, then the witches": "macbeth_cast.txt",
    "The Tempest: Prospero and Miranda": "tempest_prospero.txt",
    "Macbeth: the dagger": "macbeth_dagger.txt",
}


def load_examples() -> dict[str, str]:
    """title -> prompt text."""
    return {title: (PROMPTS / name).read_text(encoding="utf-8") for title, name in EXAMPLES.items()}
