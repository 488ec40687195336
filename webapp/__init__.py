"""What the browser app (``app.py``) runs on, apart from its layout: its settings and their one argument
parser, the loaded models and reports, the visitors' uploaded reports held in bounded memory, and the
HTTP middleware. Like ``app.py`` it sits above ``m3diff`` and ``analysis`` and imports them."""
