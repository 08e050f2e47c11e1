"""Dashboard (placeholder; replaced by the server-rendered pages)."""

from fastapi import APIRouter

router = APIRouter()
