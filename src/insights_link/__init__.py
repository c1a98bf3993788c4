"""insights-link: refined engagement events -> Customer Insights activity data sources."""

__version__ = "0.1.0"
