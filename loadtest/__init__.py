"""Locust staleness load test, its oracle and the report."""
