// The only script of the login page: show the error a failed login redirects back with.
if (new URLSearchParams(location.search).has("error")) {
  document.getElementById("login-error").hidden = false;
}
