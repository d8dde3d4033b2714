# Stand-in for a real bench's apps/frappe: frappe-realtime reads the version from here.
__version__ = "16.0.0"
