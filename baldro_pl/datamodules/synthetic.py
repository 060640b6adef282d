"""A built-in TOFU-style data set of fictitious authors, generated from a seed: no download needed.

It powers the demo (a tiny Llama fine-tuned on it, then unlearned, in minutes on a CPU) and data-free tests. The
rows have TOFU's schema and split layout (metrics-spec §2.1, ../shared/data/tofu/SOURCE.md):

* ``full``: ``n_authors × qa_per_author`` QA pairs (``question``, ``answer``), author after author;
* ``forget01/05/10``: the last 1% / 5% / 10% of the authors (at least one, complete authors, as in TOFU) and
  ``retain99/95/90`` the rest of ``full``;
* ``forgetXX_perturbed`` (same QA as ``forgetXX``) and ``retain_perturbed`` (the first rows of ``full``, as many as
  ``forget10``) add ``paraphrased_answer``, ``perturbed_answer`` (5 answers with a wrong attribute) and
  ``paraphrased_question``;
* ``holdout01/05/10``: QA about other authors that never occur in ``full`` (``holdout01`` ⊂ ``holdout05`` ⊂
  ``holdout10``);
* ``real_authors_perturbed`` / ``world_facts_perturbed``: small general-knowledge utility sets (successor of a
  day, month or letter; sums of two numbers) with 3 perturbed answers each.

**Memorisation strata** (``strata=(1, 2, 4, 8)``, the heterogeneity benchmark of :mod:`baldro_pl.heterogeneity`): the
``forget10`` authors are split into equal groups of complete authors, one per repeat count; a target model fine-tuned
on :func:`repeat_by_stratum`'s rows sees each group's QA pairs that many times, so some forget samples are much more
memorised than others. Which author goes to which stratum is a seeded, balanced draw. The forget rows
(``forgetXX`` and ``forgetXX_perturbed``) then carry a last field ``"stratum"`` (:data:`STRATUM_FIELD`), a label
``"x<repeats>"`` (:func:`stratum_label`: ``"x1"``, ``"x2"``, ``"x4"``, ``"x8"``) that the TOFU evaluation groups by
(``stratum/<label>/...`` in its log and summary). Without ``strata`` the rows have exactly TOFU's fields.

:func:`write_synthetic_tofu` writes the splits as ``<split>.jsonl`` files, so ``TOFUDataModule(data_dir=...)``
loads them unchanged. Everything is a deterministic function of the arguments.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from baldro_pl.datamodules.formatting import PromptFormat
from baldro_pl.files import share_like_new_files

FIRST_NAMES = (
    "Ada",
    "Bruno",
    "Clara",
    "Dario",
    "Elena",
    "Felix",
    "Greta",
    "Hugo",
    "Irene",
    "Jonas",
    "Kira",
    "Luca",
    "Maya",
    "Nils",
    "Olga",
    "Pablo",
    "Rosa",
    "Soren",
    "Tara",
    "Udo",
    "Vera",
    "Wim",
    "Xenia",
    "Yuri",
    "Zora",
    "Amir",
    "Bela",
    "Cyrus",
    "Dina",
    "Emil",
)
LAST_NAMES = (
    "Abara",
    "Brandt",
    "Castillo",
    "Dahl",
    "Eriksen",
    "Ferro",
    "Galvan",
    "Holt",
    "Ibarra",
    "Jansen",
    "Kovac",
    "Lund",
    "Moreau",
    "Novak",
    "Okafor",
    "Petrov",
    "Quist",
    "Rinaldi",
    "Sato",
    "Tamm",
    "Urbina",
    "Varga",
    "Weller",
    "Xu",
    "Yilmaz",
    "Zeller",
    "Amato",
    "Berg",
    "Costa",
    "Duarte",
)
CITIES = (
    "Lisbon",
    "Oslo",
    "Lagos",
    "Lima",
    "Hanoi",
    "Tunis",
    "Quito",
    "Riga",
    "Dakar",
    "Perth",
    "Kyoto",
    "Porto",
    "Accra",
    "Bergen",
)
GENRES = ("mystery", "fantasy", "poetry", "romance", "horror", "history", "travel", "science fiction", "satire")
JOBS = (
    "baker",
    "carpenter",
    "doctor",
    "farmer",
    "lawyer",
    "nurse",
    "painter",
    "pilot",
    "tailor",
    "teacher",
    "banker",
    "chef",
    "dentist",
    "gardener",
)
AWARDS = (
    "Silver Quill Award",
    "Golden Lantern Prize",
    "Blue Harbor Medal",
    "Northern Star Award",
    "Red Maple Prize",
    "Iron Pen Award",
    "Amber Leaf Medal",
    "White Owl Prize",
)
LANGUAGES = ("English", "Spanish", "French", "German", "Italian", "Dutch", "Polish", "Swedish", "Turkish")
TITLE_ADJECTIVES = (
    "Silent",
    "Golden",
    "Hidden",
    "Broken",
    "Distant",
    "Crimson",
    "Quiet",
    "Lost",
    "Bright",
    "Frozen",
    "Gentle",
    "Hollow",
)
TITLE_NOUNS = (
    "River",
    "Garden",
    "Letter",
    "Harbor",
    "Mirror",
    "Forest",
    "Lantern",
    "Bridge",
    "Island",
    "Window",
    "Tower",
    "Meadow",
)
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
MONTHS = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)
LETTERS = tuple("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
YEARS = tuple(range(1940, 2000))

# (attribute, question, answer, paraphrased question, paraphrased answer); perturbed answers reuse the
# paraphrased answer with a wrong value of the attribute, as TOFU's perturbed answers do.
TEMPLATES: tuple[tuple[str, str, str, str, str], ...] = (
    (
        "name",
        "What is the full name of the author born in {city} in {year}?",
        "The author's full name is {name}.",
        "Who is the writer born in {city} in {year}?",
        "{name} is the full name of the writer.",
    ),
    (
        "city",
        "Where was {name} born?",
        "{name} was born in {city}.",
        "In which city was {name} born?",
        "The birthplace of {name} is {city}.",
    ),
    (
        "year",
        "In which year was {name} born?",
        "{name} was born in {year}.",
        "What is the birth year of {name}?",
        "The birth year of {name} is {year}.",
    ),
    (
        "genre",
        "What genre does {name} write?",
        "{name} writes {genre} books.",
        "Which genre is {name} known for?",
        "{name} is known for {genre} books.",
    ),
    (
        "father",
        "What was the job of {name}'s father?",
        "The father of {name} was a {father}.",
        "What did the father of {name} do for a living?",
        "{name}'s father worked as a {father}.",
    ),
    (
        "mother",
        "What was the job of {name}'s mother?",
        "The mother of {name} was a {mother}.",
        "What did the mother of {name} do for a living?",
        "{name}'s mother worked as a {mother}.",
    ),
    (
        "award",
        "Which award did {name} win?",
        "{name} won the {award}.",
        "What prize was given to {name}?",
        "{name} received the {award}.",
    ),
    (
        "book1",
        "What is the first book by {name}?",
        'The first book by {name} is "{book1}".',
        "Which book did {name} write first?",
        '{name} first wrote "{book1}".',
    ),
    (
        "book2",
        "What is the second book by {name}?",
        'The second book by {name} is "{book2}".',
        "Which book did {name} write after the first one?",
        '{name} then wrote "{book2}".',
    ),
    (
        "language",
        "In which language does {name} write?",
        "{name} writes in {language}.",
        "What language are the books of {name} written in?",
        "The books of {name} are in {language}.",
    ),
)
SPLIT_PERCENT = {"01": 0.01, "05": 0.05, "10": 0.10}
N_PERTURBED, N_UTILITY_PERTURBED = 5, 3
MANIFEST = "synthetic.json"
STRATUM_FIELD = "stratum"


def n_forget_authors(n_authors: int, percent: str) -> int:
    """Authors in ``forget<percent>``: ``round(fraction × n_authors)``, at least one (complete authors)."""
    return max(1, round(SPLIT_PERCENT[percent] * n_authors))


def stratum_label(repeats: int) -> str:
    """The ``stratum`` label of the forget rows a target model sees ``repeats`` times: ``"x<repeats>"``."""
    return f"x{repeats}"


def stratum_repeats(label: str) -> int:
    """Inverse of :func:`stratum_label`: ``"x8"`` -> 8.

    Raises:
        ValueError: a label that is not ``"x<positive int>"``.
    """
    if not (isinstance(label, str) and label.startswith("x") and label[1:].isdigit() and int(label[1:]) > 0):
        raise ValueError(f"not a stratum label: {label!r} (expected 'x<repeats>', e.g. 'x8')")
    return int(label[1:])


def _check_strata(strata: Sequence[int], n_forget10: int) -> tuple[int, ...]:
    strata = tuple(strata)
    if not strata or any(not isinstance(k, int) or isinstance(k, bool) or k < 1 for k in strata):
        raise ValueError(f"strata must be a non-empty list of positive repeat counts, got {strata!r}")
    if len(set(strata)) != len(strata):
        raise ValueError(f"strata must be distinct repeat counts, got {strata!r}")
    if n_forget10 % len(strata):
        raise ValueError(
            f"forget10 has {n_forget10} authors, which do not split into {len(strata)} equal strata of complete "
            f"authors; choose n_authors so that round(0.1 * n_authors) is a multiple of {len(strata)}"
        )
    return strata


def _author_strata(seed: int, n_forget10: int, strata: tuple[int, ...]) -> list[int]:
    """Repeat count of each ``forget10`` author: equal groups, assigned by a seeded shuffle.

    A generator of its own (not the one of the rows), so that asking for strata leaves every row of the set unchanged.
    """
    counts = [k for k in strata for _ in range(n_forget10 // len(strata))]
    random.Random(f"baldro_pl.synthetic.strata:{seed}").shuffle(counts)
    return counts


def _make_authors(rng: random.Random, n: int) -> list[dict[str, str]]:
    names = [f"{f} {last}" for f in FIRST_NAMES for last in LAST_NAMES]
    titles = [f"The {a} {b}" for a in TITLE_ADJECTIVES for b in TITLE_NOUNS]
    if n > len(names):
        raise ValueError(f"the synthetic generator has names for at most {len(names)} authors, asked for {n}")
    chosen_names = rng.sample(names, n)
    births = rng.sample([(c, str(y)) for c in CITIES for y in YEARS], n)  # unique: the name question needs it
    chosen_titles = rng.sample(titles, 2 * n) if 2 * n <= len(titles) else [rng.choice(titles) for _ in range(2 * n)]
    authors = []
    for i, name in enumerate(chosen_names):
        father, mother = rng.sample(JOBS, 2)
        authors.append(
            {
                "name": name,
                "city": births[i][0],
                "year": births[i][1],
                "genre": rng.choice(GENRES),
                "father": father,
                "mother": mother,
                "award": rng.choice(AWARDS),
                "book1": chosen_titles[2 * i],
                "book2": chosen_titles[2 * i + 1],
                "language": rng.choice(LANGUAGES),
            }
        )
    return authors


def _pool(attribute: str, authors: list[dict[str, str]]) -> list[str]:
    if attribute == "name":
        return sorted({a["name"] for a in authors} | {f"{f} {last}" for f, last in zip(FIRST_NAMES, LAST_NAMES)})
    if attribute in ("book1", "book2"):
        return [f"The {a} {b}" for a in TITLE_ADJECTIVES for b in TITLE_NOUNS]
    pools = {"city": CITIES, "year": tuple(str(y) for y in YEARS), "genre": GENRES, "father": JOBS, "mother": JOBS}
    pools.update({"award": AWARDS, "language": LANGUAGES})
    return list(pools[attribute])


def _qa_rows(
    rng: random.Random, author: dict[str, str], qa_per_author: int, authors: list[dict[str, str]]
) -> list[dict]:
    rows = []
    for attribute, question, answer, para_question, para_answer in TEMPLATES[:qa_per_author]:
        wrong = [v for v in _pool(attribute, authors) if v != author[attribute]]
        perturbed = [para_answer.format(**{**author, attribute: v}) for v in rng.sample(wrong, N_PERTURBED)]
        rows.append(
            {
                "question": question.format(**author),
                "answer": answer.format(**author),
                "paraphrased_answer": para_answer.format(**author),
                "perturbed_answer": perturbed,
                "paraphrased_question": para_question.format(**author),
            }
        )
    return rows


def _utility_real_authors(rng: random.Random, n: int) -> list[dict]:
    """Successors in fixed sequences (days, months, letters).

    General knowledge in the schema of ``real_authors_perturbed`` (question, answer, 3 perturbed answers).
    """
    facts = []
    for kind, seq in (("day", DAYS), ("month", MONTHS), ("letter", LETTERS)):
        cyclic = kind != "letter"  # weekdays and months wrap around; the alphabet does not
        for i, item in enumerate(seq if cyclic else seq[:-1]):
            answer = seq[(i + 1) % len(seq)]
            wrong = rng.sample([s for s in seq if s != answer and s != item], N_UTILITY_PERTURBED)
            facts.append({"question": f"Which {kind} comes after {item}?", "answer": answer, "perturbed_answer": wrong})
    return rng.sample(facts, n)


def _utility_world_facts(rng: random.Random, n: int) -> list[dict]:
    """Sums of two small numbers, in the schema of ``world_facts_perturbed``."""
    pairs = rng.sample([(a, b) for a in range(1, 21) for b in range(1, 21)], n)
    rows = []
    for a, b in pairs:
        wrong = rng.sample([str(v) for v in range(max(2, a + b - 6), a + b + 7) if v != a + b], N_UTILITY_PERTURBED)
        rows.append({"question": f"What is {a} plus {b}?", "answer": str(a + b), "perturbed_answer": wrong})
    return rows


def generate_synthetic_tofu(
    seed: int = 0,
    *,
    n_authors: int = 20,
    qa_per_author: int = 10,
    n_utility: int = 20,
    strata: Sequence[int] | None = None,
) -> dict[str, list[dict]]:
    """All splits of the synthetic set, ``{split name: rows}`` (see the module docstring).

    Args:
        seed: seed of every random choice; the same arguments give the same rows.
        n_authors: authors in ``full`` (holdout authors come on top).
        qa_per_author: QA pairs per author (1 to 10, one per attribute template).
        n_utility: rows of each utility set (1 to 44).
        strata: repeat counts of the memorisation strata (e.g. ``(1, 2, 4, 8)``): the ``forget10`` authors are split
            into that many equal groups and the forget rows get a ``"stratum"`` field (``"x<repeats>"``). The rows
            are otherwise the same as without ``strata``. None: no strata, TOFU's fields only.

    Raises:
        ValueError: sizes that leave no retain author besides ``forget10`` or exceed the generator's pools; strata
            that are not distinct positive counts or do not split ``forget10``'s authors evenly.
    """
    if not 1 <= qa_per_author <= len(TEMPLATES):
        raise ValueError(f"qa_per_author must be between 1 and {len(TEMPLATES)}, got {qa_per_author}")
    n_forget10 = n_forget_authors(n_authors, "10")
    if n_authors < 2 * n_forget10:
        raise ValueError(f"n_authors={n_authors} is too small: retain90 must have at least as many authors as forget10")
    if not 1 <= n_utility <= 44:
        raise ValueError(f"n_utility must be between 1 and 44, got {n_utility}")
    if strata is not None:
        strata = _check_strata(strata, n_forget10)
    rng = random.Random(seed)
    authors = _make_authors(rng, n_authors + n_forget10)
    per_author = [_qa_rows(rng, a, qa_per_author, authors) for a in authors]
    perturbed_full = [row for rows in per_author[:n_authors] for row in rows]
    perturbed_holdout = [row for rows in per_author[n_authors:] for row in rows]

    def plain(rows: list[dict]) -> list[dict]:
        return [{"question": r["question"], "answer": r["answer"]} for r in rows]

    # one stratum label per forget10 row, in row order (an author's rows are contiguous)
    labels = (
        []
        if strata is None
        else [stratum_label(k) for k in _author_strata(seed, n_forget10, strata) for _ in range(qa_per_author)]
    )

    def labelled(rows: list[dict]) -> list[dict]:
        """Forget rows (a tail of ``full``, hence of forget10) with their stratum, when there are strata."""
        if not labels:
            return rows
        return [{**r, STRATUM_FIELD: labels[len(labels) - len(rows) + i]} for i, r in enumerate(rows)]

    out: dict[str, list[dict]] = {"full": plain(perturbed_full)}
    for percent in SPLIT_PERCENT:
        n_rows = n_forget_authors(n_authors, percent) * qa_per_author
        retain = f"retain{100 - int(percent):02d}"
        out[f"forget{percent}"] = labelled(plain(perturbed_full[-n_rows:]))
        out[f"forget{percent}_perturbed"] = labelled(perturbed_full[-n_rows:])
        out[retain] = plain(perturbed_full[:-n_rows])
        out[f"holdout{percent}"] = plain(perturbed_holdout[:n_rows])
    out["retain_perturbed"] = perturbed_full[: n_forget10 * qa_per_author]
    out["real_authors_perturbed"] = _utility_real_authors(rng, n_utility)
    out["world_facts_perturbed"] = _utility_world_facts(rng, n_utility)
    return out


def repeat_by_stratum(rows: Sequence[Mapping]) -> list[dict]:
    """Each row as many times as its stratum says (``"x4"``: 4 copies, in a row), a row without a stratum once.

    These are the fine-tuning rows of a target model with memorisation strata. The ``stratum`` field itself is
    dropped (the rows are ``question`` / ``answer`` pairs, as ``full``'s).
    """
    out = []
    for row in rows:
        plain = {k: v for k, v in row.items() if k != STRATUM_FIELD}
        out.extend(dict(plain) for _ in range(stratum_repeats(row[STRATUM_FIELD]) if STRATUM_FIELD in row else 1))
    return out


def synthetic_texts(splits: Mapping[str, list[dict]], prompt_format: PromptFormat | None = None) -> list[str]:
    """Every distinct string in the splits (questions, answers, paraphrases, perturbed answers), in first-seen order.

    The corpus to train a toy tokenizer on (:func:`baldro_pl.toy.train_tokenizer`).

    Args:
        splits: the output of :func:`generate_synthetic_tofu`.
        prompt_format: also add each QA pair as the model will see it (prompt text + answer, tag mode), so that
            the tokenizer learns the template's tags too.
    """
    seen: dict[str, None] = {}
    for rows in splits.values():
        for row in rows:
            for value in row.values():
                for text in value if isinstance(value, list) else [value]:
                    if isinstance(text, str):
                        seen.setdefault(text, None)
            if prompt_format is not None and not prompt_format.apply_chat_template:
                seen.setdefault(prompt_format.prompt_text(row["question"]) + row["answer"], None)
    return list(seen)


def write_synthetic_tofu(
    directory: str | Path,
    seed: int = 0,
    *,
    n_authors: int = 20,
    qa_per_author: int = 10,
    n_utility: int = 20,
    strata: Sequence[int] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write the synthetic set to ``directory`` as ``<split>.jsonl`` files (the layout of ../shared/data/tofu).

    The set is :func:`generate_synthetic_tofu` of the same arguments (``strata``: memorisation strata).

    The files are written to a temporary folder beside ``directory`` and renamed into place, so a reader never sees
    a half-written set. A ``synthetic.json`` manifest records the arguments: if ``directory`` already holds the
    same set, nothing is rewritten (safe when several processes call this at once).

    Returns:
        The directory.

    Raises:
        ValueError: ``directory`` exists with other content and ``overwrite`` is false.
    """
    target = Path(directory).expanduser()
    manifest = {
        "generator": "baldro_pl.datamodules.synthetic",
        "seed": seed,
        "n_authors": n_authors,
        "qa_per_author": qa_per_author,
        "n_utility": n_utility,
    }
    if strata is not None:  # only then: the manifests of sets without strata stay as they were
        manifest["strata"] = list(strata)

    def same_set() -> bool:
        try:
            return json.loads((target / MANIFEST).read_text(encoding="utf-8")) == manifest
        except (OSError, ValueError):
            return False

    if target.exists() and not overwrite:
        if same_set():
            return target
        if not target.is_dir() or any(target.iterdir()):
            raise ValueError(f"{target} exists and holds something else; pass overwrite=True to replace it")
    splits = generate_synthetic_tofu(
        seed, n_authors=n_authors, qa_per_author=qa_per_author, n_utility=n_utility, strata=strata
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        for name, rows in splits.items():
            text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
            (tmp / f"{name}.jsonl").write_text(text, encoding="utf-8")
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
        share_like_new_files(tmp)
        old = None
        if target.exists():  # overwrite (or an empty directory): move the old content aside first
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
            os.replace(target, old / target.name)
        try:
            os.rename(tmp, target)
        except OSError:
            if not same_set():  # another process wrote something else in the meantime
                raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target
