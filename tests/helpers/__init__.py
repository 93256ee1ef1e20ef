"""Helpers shared by the tests: one place, imported by tests, never one test module from another."""
