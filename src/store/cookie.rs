//! `CookieStore`: the session sealed in the cookie. (Being written for issue 5.)
