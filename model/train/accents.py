"""Generated accents of English: espeak-ng language files drawn at random, so that training hears more accents
than espeak-ng ships.

espeak-ng defines an accent in a small text file (`espeak-ng-data/lang/gmw/en-GB-scotland` and the like): a
phoneme table, which of the dictionary's conditional rules apply (`dictrules`), the lengths of stressed and
unstressed syllables (`stressLength`), an intonation, formant shifts and phoneme substitutions (`replace`,
e.g. Lancashire's final "-ing" said "-in"). An accent here is such a file whose every line is drawn from
`random.Random(index)`:

- a phoneme table and dictionary rules of the training accents (`speech.TRAIN_ACCENTS`); never the held-out
  accents' tables (`en-wi`, `en-us-nyc`) nor their own rules (`dictrules 8`);
- syllable lengths and stress amplitudes around the training accents' own, an intonation (1-4), the first
  three formants shifted by up to ±8%;
- one to four substitutions from `SUBSTITUTIONS`: features common to many Englishes (th-stopping and
  th-fronting, monophthongal FACE and GOAT, h-dropping, "-in" for "-ing", STRUT and FOOT vowels, the
  training accents' own vowel changes). Each maps to a phoneme that every training table has (checked with
  `espeak-ng -x`: a phoneme a table lacks is dropped silently). Th-stopping is also one of the six
  substitutions of the held-out Caribbean accent (`en-029`), as it is of Irish, Indian, African and New York
  Englishes: the generated accents share features with the held-out ones, never their files.

espeak-ng reads language files from its data folder only, so the accents live in a copy of the system's
data folder (13 MB) with the generated files for languages (`data_path`), built once per machine and process and
passed to espeak-ng as `--path` (`model.train.speech.speak`). A generated accent is named `ACCENT_PREFIX` + its index.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import shutil
import subprocess
import tempfile
from functools import cache
from pathlib import Path

ACCENT_PREFIX = "mmserve-accent-"
ACCENTS = 200  # generated accents: indices 0-199 (espeak-ng lists at most 349 voices, variants included)
TABLES = ("en", "en-us", "en-sc", "en-n", "en-rp", "en-wm")  # the training accents' phoneme tables
DICTRULES = (2, 3, 5, 6, 7)  # the conditional dictionary rules the training accents use
# (flags, phoneme, replacement): flags 00 everywhere, 03 only in a word's final unstressed syllable; one
# substitution per phoneme and accent
SUBSTITUTIONS = (
    ("00", "D", "d"),  # th-stopping ("dis", "tree")
    ("00", "T", "t["),
    ("00", "D", "v"),  # th-fronting ("fing", "bruvver")
    ("00", "T", "f"),
    ("00", "eI", "e:"),  # monophthongal FACE and GOAT (Scotland, India, the Caribbean, Africa)
    ("00", "oU", "o:"),
    ("00", "h", "NULL"),  # h-dropping
    ("03", "N", "n"),  # "-in" for "-ing" (as the Lancaster accent)
    ("00", "V", "@"),  # STRUT as schwa
    ("00", "U", "u:"),  # FOOT as GOOSE
    ("00", "e@", "e:"),  # SQUARE monophthong
    ("00", "i:", "i"),  # short FLEECE
    ("03", "I", "i"),  # happy-tensing (as the American and RP accents)
    ("03", "@", "a#"),  # open final schwa (as RP)
    ("03", "3", "a#"),
)


def accent_name(index: int) -> str:
    return f"{ACCENT_PREFIX}{index}"


def is_generated(accent: str) -> bool:
    return accent.startswith(ACCENT_PREFIX)


def accent_file(index: int) -> str:
    """The espeak-ng language file of generated accent `index` (a pure function of the index)."""
    rng = random.Random(1_000_003 * index + 17)
    lines = [
        f"name {accent_name(index)}",
        "language en 99",
        "dictionary en",
        f"phonemes {rng.choice(TABLES)}",
    ]
    rules = sorted(rng.sample(DICTRULES, rng.randint(0, 3)))
    if rules:
        lines.append("dictrules " + " ".join(map(str, rules)))
    # unstressed, diminished, secondary, ... (espeak-ng's eight syllable kinds), near the training accents'
    base = (150, 130, 190, 180, 0, 0, 240, 280)
    lines.append("stressLength " + " ".join(str(0 if b == 0 else b + rng.randint(-30, 30)) for b in base))
    lines.append("stressAmp " + " ".join(str(rng.randint(15, 22)) for _ in range(8)))
    lines.append(f"intonation {rng.randint(1, 4)}")
    for formant in (1, 2, 3):
        lines.append(f"formant {formant} {rng.randint(92, 108)} 100 100")
    taken: set[str] = set()
    for flags, phoneme, replacement in rng.sample(SUBSTITUTIONS, rng.randint(1, 4)):
        if phoneme not in taken:
            taken.add(phoneme)
            lines.append(f"replace {flags} {phoneme} {replacement}")
    return "\n".join(lines) + "\n"


def _system_data(espeak: str) -> Path:
    """The data folder of the espeak-ng program `espeak`, as its `--version` reports it."""
    version = subprocess.run([espeak, "--version"], capture_output=True, text=True, check=True)
    found = re.search(r"Data at:\s*(\S+)", version.stdout)
    if found is None:
        raise RuntimeError(f"espeak-ng did not say where its data is: {version.stdout!r}")
    return Path(found.group(1))


@cache
def data_path(espeak: str) -> Path:
    """A folder holding `espeak-ng-data`: that of the espeak-ng program `espeak` (its dictionaries, phoneme
    tables and voice variants), with the generated accents for languages (`lang/mmserve/`).

    Built once (in the temporary folder, named by a digest of the system folder and the accents, so that a
    change to either builds a new one) and shared by processes: each builds its own copy and renames it into
    place, and a copy that loses the race is removed."""
    system = _system_data(espeak)
    files = {accent_name(i): accent_file(i) for i in range(ACCENTS)}
    digest = hashlib.blake2b((str(system) + "".join(files.values())).encode(), digest_size=8).hexdigest()
    final = Path(tempfile.gettempdir()) / f"mmserve-espeak-{digest}"
    if (final / "espeak-ng-data" / "lang" / "mmserve").is_dir():
        return final
    building = Path(tempfile.mkdtemp(prefix="mmserve-espeak-building-"))
    # the system's languages and MBROLA voices left out: espeak-ng would list them before ours, past its limit
    shutil.copytree(system, building / "espeak-ng-data", symlinks=True, ignore=shutil.ignore_patterns("lang", "mb"))
    folder = building / "espeak-ng-data" / "lang" / "mmserve"
    folder.mkdir(parents=True)
    for name, text in files.items():
        (folder / name).write_text(text)
    try:
        os.rename(building, final)
    except OSError:  # another process got there first
        shutil.rmtree(building, ignore_errors=True)
    return final
