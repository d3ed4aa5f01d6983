"""snapctl: declare Volcengine RTC snapshot tasks in YAML, plan, apply, keep state."""

__version__ = "0.1.0"
