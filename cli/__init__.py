"""The dgamix command line: one Typer command per stage, thin over pipeline/ and mixing/."""
