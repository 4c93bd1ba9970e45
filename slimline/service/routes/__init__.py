"""One router per resource; each route translates HTTP to one call and back."""
