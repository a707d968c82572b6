"""The one exception type users see: a message they can act on."""


class JaxswapError(Exception):
  """A problem with the user's input (a file, a flag, a workdir), not a bug.

  Command-line entry points print the message and exit with status 2.
  """
