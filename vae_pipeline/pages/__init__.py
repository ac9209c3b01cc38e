"""The project's HTML pages: the report (stages/report.py), `make compare` and `make sweep`.

One Jinja2 set-up for all three: templates autoescaped, an undefined name an error (a typo in a
template fails the page rather than leaving a blank), block tags that leave no blank lines, and
the shared look, templates/page.css,
which each page includes inline so that it opens offline as one file.
"""
from jinja2 import ChoiceLoader, Environment, PackageLoader, StrictUndefined


def environment(package: str | None = None) -> Environment:
    """The Jinja2 environment of the pages: this package's templates, and `package`'s (e.g.
    "vae_pipeline.report") before them when given."""
    loaders = [PackageLoader(package, "templates")] if package else []
    return Environment(loader=ChoiceLoader([*loaders, PackageLoader("vae_pipeline.pages", "templates")]),
                       autoescape=True, undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
