// A figure wrapped in a link to its own PNG (written [![alt](x.png)](x.png) so that it
// also works on a code host) opens at full size in the browser instead of downloading.
document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("a.download img").forEach((img) => {
    const link = img.closest("a");
    link.removeAttribute("download");
    link.setAttribute("title", "open the figure at full size");
  });
});
