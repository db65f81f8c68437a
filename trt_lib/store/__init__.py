"""Engine files, their manifest and the names they are stored under."""
