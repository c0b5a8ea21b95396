"""(placeholder: commands are added by the issue that builds them)"""


def register(groups) -> None:
    pass
