from ._cli import command

command()
