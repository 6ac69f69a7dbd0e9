"""Method frameworks, one module or folder each; each registers its model class with
``models.factory.register_framework`` on import (``models.factory`` imports them all)."""
