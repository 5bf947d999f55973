"""The demo mesh: its layout and files (``mesh``), its application (``app``) and the
``xdsd demo`` runner (``runner``), which starts xdsd, real Envoys and the applications
on loopback addresses."""
