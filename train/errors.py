"""User-input errors: the CLI prints their one-line message and exits with code 2 (no traceback)."""


class UserError(ValueError):
    """A problem in what the user gave us: config keys or types, paths, names, corrupt files."""


class ConfigError(UserError):
    pass


class DataError(UserError):
    pass
