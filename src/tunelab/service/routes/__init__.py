"""HTTP routes, one module per resource, each an APIRouter that the app includes."""
