"""The one exception type for errors a user can cause."""


class ZooError(Exception):
    """A bad file, config, checkpoint or name, with a message that says what and where."""
