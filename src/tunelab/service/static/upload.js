// The upload form with a progress bar: the file goes by XMLHttpRequest (fetch reports no upload progress),
// then the page the server redirected to opens, as after the plain form's post. A refused upload's page
// (the form with its error) replaces this one's body. Without JavaScript the form posts as it is.
"use strict";

const form = document.querySelector("form[data-upload]");
if (form) {
  const bar = form.querySelector("progress");
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const request = new XMLHttpRequest();
    request.open("POST", form.action);
    request.upload.onprogress = (progress) => {
      if (progress.lengthComputable) {
        bar.hidden = false;
        bar.value = progress.loaded / progress.total;
      }
    };
    request.onload = () => {
      if (request.status < 400 && request.responseURL !== form.action) {
        window.location.assign(request.responseURL);
        return;
      }
      const page = new DOMParser().parseFromString(request.responseText, "text/html");
      document.body.replaceWith(page.body);
    };
    request.onerror = () => form.submit(); // no connection for the script's request: try the plain post
    request.send(new FormData(form));
  });
}
