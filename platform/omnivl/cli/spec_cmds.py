"""(placeholder)"""


def register(groups) -> None:
    pass
