"""snapctl: declare Volcengine RTC snapshot tasks in YAML, plan, apply, keep state."""

#: The one place the version is written: pyproject.toml reads it (dynamic version), snapctl --version
#: prints it; CHANGELOG.md's latest entry and the CI templates' pinned tag (v0.2.0) match it.
__version__ = "0.2.0"
