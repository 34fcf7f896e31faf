"""Safe string types: names that end up in file paths, sbatch directives and shell lines.

Each type refuses anything a shell would treat specially (``;``, newlines, quotes,
``$()``, spaces, ``/``), so no quoting mistake downstream can turn a name into a command.

>>> check_name("sweep-01.v2")
'sweep-01.v2'
>>> check_name("a; rm -rf ~")
Traceback (most recent call last):
...
htc_notebook.errors.SpecError: name = 'a; rm -rf ~' is not allowed: 1-128 characters: letters, digits, _ . -
(starting with a letter or digit); found ';'
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BeforeValidator

from htc_notebook.errors import SpecError

NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}"  # a project, task or job name (also a directory name)

_RULES: dict[str, tuple[re.Pattern[str], re.Pattern[str], str]] = {
    # kind: (whole-value pattern, one allowed character, description)
    "name": (re.compile(NAME_PATTERN), re.compile(r"[A-Za-z0-9_.-]"),
             "1-128 characters: letters, digits, _ . - (starting with a letter or digit)"),
    "env": (re.compile(r"[A-Za-z_][A-Za-z0-9_]*"), re.compile(r"[A-Za-z0-9_]"),
            "an environment variable name: letters, digits, _ (not starting with a digit)"),
    "sched": (re.compile(r"[A-Za-z0-9_.-]+"), re.compile(r"[A-Za-z0-9_.-]"),
              "a scheduler name: letters, digits, _ . -"),
    "constraint": (re.compile(r"[A-Za-z0-9_.\-&|,:\[\]*!]+"), re.compile(r"[A-Za-z0-9_.\-&|,:\[\]*!]"),
                   "a SLURM feature expression: letters, digits and _ . - & | , : [ ] * !"),
    # a host path bound into containers: ch-run and apptainer split --bind values at ':' and ','
    "host_path": (re.compile(r"(/(?!\.\.?(?:/|$))[A-Za-z0-9_.+@-]+)+"), re.compile(r"[A-Za-z0-9_.+@/-]"),
                  "an absolute path: / then letters, digits and _ . + @ - (no : , or spaces: bind "
                  "options split at them)"),
    # a site's own sbatch option (reservation, exclusive, gpus-per-task, clusters): one --key or
    # --key=value token, written as an #SBATCH line (no spaces, quotes, newlines or # of its own)
    "sbatch_option": (re.compile(r"--[a-z][a-z0-9-]*(=[A-Za-z0-9_.\-&|,:@%+/=\[\]*!]+)?"),
                      re.compile(r"[A-Za-z0-9_.\-&|,:@%+/=\[\]*!]"),
                      "one sbatch option: --key or --key=value, the value letters, digits and _ . - & | , : @ "
                      "% + / = [ ] * ! (no spaces, quotes, newlines or #)"),
}
# sbatch options the toolkit sets itself: a site's own may not change how it tracks its jobs
OWNED_SBATCH = ("array", "job-name", "output", "error", "chdir", "comment", "requeue", "no-requeue", "signal",
                "parsable", "wrap", "open-mode")


def check_sbatch_option(value: object, field: str = "sbatch_options") -> str:
    """Return `value` if it is one plain sbatch option the toolkit does not set itself, else SpecError.

    >>> check_sbatch_option("--reservation=maint"), check_sbatch_option("--exclusive")
    ('--reservation=maint', '--exclusive')
    """
    text = _check("sbatch_option", value, field)
    key = text[2:].split("=", 1)[0]
    if key in OWNED_SBATCH:
        raise SpecError("", field, value, f"an option the toolkit does not set itself (it sets --{key} to track "
                        f"its jobs); not one of {', '.join('--' + k for k in OWNED_SBATCH)}")
    return text


def _check(kind: str, value: object, field: str) -> str:
    whole, char, described = _RULES[kind]
    if not isinstance(value, str):
        raise SpecError("", field, value, f"{described} (got {type(value).__name__})")
    if whole.fullmatch(value):
        return value
    bad = next((c for c in value if not char.fullmatch(c)), None)
    if bad is not None:
        hint = f"; found {bad!r}"
    elif not value:
        hint = "; got an empty string"
    elif kind == "name" and len(value) > 128:
        hint = f"; got {len(value)} characters"
    elif kind == "sbatch_option" and not value.startswith("--"):
        hint = "; it does not start with --"
    elif kind == "host_path" and not value.startswith("/"):
        hint = "; it is not absolute"
    elif kind == "host_path":
        hint = "; '/' alone, '.' and '..' parts and a trailing '/' are not allowed"
    else:
        hint = f"; cannot start with {value[0]!r}"
    raise SpecError("", field, value, described + hint)


def check_name(value: object, field: str = "name") -> str:
    """Return `value` if it is a valid project/task/job name, else raise SpecError."""
    return _check("name", value, field)


def check_safe_text(value: object, field: str = "text") -> str:
    """Return `value` if it is a str without NUL characters, else raise SpecError."""
    if not isinstance(value, str):
        raise SpecError("", field, value, f"text (a string) (got {type(value).__name__})")
    if "\0" in value:
        raise SpecError("", field, value, "text without NUL characters")
    return value


# OCI image references of the project's registry (the distribution spec's grammar, one path component)
_REPO = re.compile(r"[a-z0-9]+(?:(?:[._]|__|[-]*)[a-z0-9]+)*")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_DIGEST = re.compile(r"sha256:[a-f0-9]{64}")
REPO_FORM = ("1-128 characters: lowercase letters and digits, with single . _ or - (or __) between them "
             "(an OCI repository name)")
IMAGE_FORM = (f"repo:tag or repo@sha256:<64 hex digits> of the project's registry; repo: {REPO_FORM}; "
              "tag: letters, digits, _ . - (1-128, not starting with . or -)")


def check_repo_name(value: object, field: str = "repoName") -> str:
    """Return `value` if it is a repository name of the project registry, else raise SpecError.

    >>> check_repo_name("lammps-2024")
    'lammps-2024'
    """
    if not isinstance(value, str) or len(value) > 128 or not _REPO.fullmatch(value):
        raise SpecError("", field, value, REPO_FORM)
    return value


def parse_image(value: object, field: str = "imageName") -> tuple[str, str]:
    """(repository, tag or digest) of an image reference `repo:tag` or `repo@sha256:...`, else SpecError.

    >>> parse_image("lammps:2024.1"), parse_image("md@sha256:" + "a" * 64)[1][:10]
    (('lammps', '2024.1'), 'sha256:aaa')
    >>> parse_image("../etc:x")
    Traceback (most recent call last):
    ...
    htc_notebook.errors.SpecError: imageName = '../etc:x' is not allowed: repo:tag or repo@sha256:<64 hex digits>
    of the project's registry; repo: 1-128 characters: lowercase letters and digits, with single . _ or - (or __)
    between them (an OCI repository name); tag: letters, digits, _ . - (1-128, not starting with . or -)
    """
    if isinstance(value, str):
        repo, at, digest = value.partition("@")
        if at and len(repo) <= 128 and _REPO.fullmatch(repo) and _DIGEST.fullmatch(digest):
            return repo, digest
        repo, colon, tag = value.partition(":")
        if colon and len(repo) <= 128 and _REPO.fullmatch(repo) and _TAG.fullmatch(tag):
            return repo, tag
    raise SpecError("", field, value, IMAGE_FORM)


def parse_site_image(value: object, field: str = "pilot_image") -> tuple[str, str]:
    """(project, image) of `project/repo:tag` (or `project/repo@sha256:...`): an image of a project's
    registry named from outside the project, as a profile names its pilots' image.

    >>> parse_site_image("site/dask:2024.12")
    ('site', 'dask:2024.12')
    """
    project, slash, image = value.partition("/") if isinstance(value, str) else ("", "", "")
    try:
        check_name(project, field)
        parse_image(image, field)
    except SpecError:
        raise SpecError("", field, value, f"project/image: a project's name, '/', then {IMAGE_FORM}") from None
    return project, image


Name = Annotated[str, BeforeValidator(lambda v: _check("name", v, ""))]
EnvName = Annotated[str, BeforeValidator(lambda v: _check("env", v, ""))]
SchedName = Annotated[str, BeforeValidator(lambda v: _check("sched", v, ""))]
Constraint = Annotated[str, BeforeValidator(lambda v: _check("constraint", v, ""))]
SafeText = Annotated[str, BeforeValidator(lambda v: check_safe_text(v, ""))]
HostPath = Annotated[str, BeforeValidator(lambda v: _check("host_path", v, ""))]
SbatchOption = Annotated[str, BeforeValidator(lambda v: check_sbatch_option(v, ""))]
SiteImage = Annotated[str, BeforeValidator(lambda v: parse_site_image(v, "") and v)]
